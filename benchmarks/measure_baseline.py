"""The classic baseline (`baseline.py`) measured as a new user runs it: trained, validated and embedded from files."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from measure import best_rate, load_data, pair_arrays, peak_rss_mb, seconds_to_auc, test_metrics


def run_baseline(args) -> dict:
    import torch

    import baseline as B
    from facesim.core.data import FaceSet
    from facesim.core.metrics import pair_distances, roc_auc
    from flops import count_flops

    tables, all_paths, test_paths = load_data(args)
    root = Path(args.faces)
    # Every face decoded once as the tutorial decodes it (PIL, 100x100): the rows of the pair
    # tables and the model-only embedding rate. Training and its validation read the files.
    files = [root / p for p in all_paths]
    decoded = B.PathDataset(files)
    faces = FaceSet(paths=list(all_paths), subjects=[Path(p).parent.name for p in all_paths],
                    tensor=torch.stack([decoded[i] for i in range(len(decoded))]))
    val = tables["pairs_val"]
    val_faces = faces.subset(sorted(set(val["image1"]) | set(val["image2"])))
    val_files = [root / p for p in val_faces.paths]
    v1, v2, vl = pair_arrays(val, val_faces)

    loader = B.train_loader(str(root / "training"), args.seed)
    net = B.SiameseNetwork()
    criterion = B.ContrastiveLoss(margin=2.0)
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-4)
    history, train_seconds, pairs = [], [], 0
    for epoch in range(1, args.baseline_epochs + 1):
        started = time.perf_counter()
        pairs = 0
        for img0, img1, label in loader:  # the tutorial's own training step
            out0, out1 = net(img0, img1)
            loss = criterion(out0, out1, label)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            pairs += len(label)
        train_seconds.append(time.perf_counter() - started)
        auc = roc_auc(pair_distances(B.embed(net, val_files).numpy(), v1, v2), vl)
        history.append({"epoch": epoch, "val_roc_auc": auc, "seconds": time.perf_counter() - started})
        print(f"  baseline epoch {epoch}: val AUC {auc:.4f}, {history[-1]['seconds']:.1f}s", file=sys.stderr, flush=True)

    test_faces = faces.subset(test_paths)
    quality = test_metrics(B.embed(net, val_files).numpy(), val_faces.subjects,
                           B.embed(net, [root / p for p in test_faces.paths]).numpy(), test_faces.subjects,
                           pair_arrays(tables["pairs_test"], test_faces))

    embed_files = best_rate(lambda: B.embed(net, files), len(files), reps=2)
    net.eval()

    def model_only():
        with torch.no_grad():
            for i in range(0, len(faces.tensor), 64):
                net.forward_once(faces.tensor[i : i + 64])

    embed_model = best_rate(model_only, len(faces.tensor), reps=3)
    flops = count_flops(B.Embedder(net), B.SIZE, B.SIZE)
    return {
        "system": "baseline", "epochs": len(history), "pairs_per_epoch": pairs,
        "train_rate": pairs * len(train_seconds) / sum(train_seconds),
        "train_faces_per_s": 2 * pairs * len(train_seconds) / sum(train_seconds),
        "seconds_per_epoch": sum(train_seconds) / len(train_seconds),
        "embed_files_per_s": embed_files, "embed_model_per_s": embed_model,
        "seconds_to_auc": seconds_to_auc(history), "final_val_auc": history[-1]["val_roc_auc"],
        # one network: a face embedded and a face passed in training cost the same
        "flops_per_face": flops, "flops_per_face_pass": flops,
        "input": f"{B.SIZE}x{B.SIZE}", **quality, **peak_rss_mb(loader_workers=True),
    }
