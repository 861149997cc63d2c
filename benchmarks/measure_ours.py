"""Our models measured as the train stage runs them: `facesim.training.fit` at the params.yaml defaults."""

from __future__ import annotations

import sys
import time

from measure import best_rate, load_data, pair_arrays, peak_rss_mb, seconds_to_auc, test_metrics

def run_ours(args, model_name: str) -> dict:
    import torch

    from facesim.core.data import FaceSet
    from facesim.core.embedding import embed_all
    from flops import count_flops
    from facesim.core.params import load_section
    from facesim.training.fit import fit
    from facesim.pipeline.faces import face_paths
    from facesim.training.train_params import TrainParams

    tables, all_paths, test_paths = load_data(args)
    params = load_section(TrainParams, args.params, "train")
    training = {n: tables[n] for n in ("pairs_train", "pairs_val", "triplets_train", "triplets_val")}
    faces = FaceSet.load(args.faces, face_paths(training), params.preprocess())
    # What the training steps went through, every member of an ensemble alike (each calls on_step).
    counted = {"examples": 0, "faces": 0}

    def count(objective, batch):
        counted["examples"] += objective.examples_in(batch)
        counted["faces"] += objective.faces_in(batch)

    result = fit(model_name, params, tables, faces, log=lambda line: print("  " + line, file=sys.stderr, flush=True),
                 on_step=count)
    model = result.model
    history = result.history.to_dict("records")
    # Training speed: the wall clock of the same training again, without validation. An ensemble's members train
    # side by side, so their own epoch seconds overlap: added up they would be more than the time it took.
    started = time.perf_counter()
    fit(model_name, params, tables, faces, log=lambda line: None, validate=False)
    train_wall = time.perf_counter() - started

    val, test = tables["pairs_val"], tables["pairs_test"]
    test_faces = FaceSet.load(args.faces, test_paths, params.preprocess())
    calibration = faces.subset(sorted(set(val["image1"]) | set(val["image2"])))
    quality = test_metrics(embed_all(model, calibration.tensor).numpy(), calibration.subjects,
                           embed_all(model, test_faces.tensor).numpy(), test_faces.subjects,
                           pair_arrays(test, test_faces))

    embed_files = best_rate(lambda: embed_all(model, FaceSet.load(args.faces, all_paths, params.preprocess()).tensor),
                            len(all_paths), reps=3)
    everyone = FaceSet.load(args.faces, all_paths, params.preprocess()).tensor
    embed_model = best_rate(lambda: embed_all(model, everyone), len(everyone), reps=5)
    # The counts add every member's face passes up; the seconds are the second training's wall clock.
    epochs, seconds = len(result.train_seconds), train_wall
    members = params.loss_params(model_name).members
    flops = count_flops(model, params.input_height, params.input_width)  # every member: one embedded face
    return {
        "system": model_name, "epochs": epochs, "members": members,
        "pairs_per_epoch": counted["examples"] // epochs,
        "train_rate": counted["examples"] / seconds,
        "train_faces_per_s": counted["faces"] / seconds,  # face passes through one member network
        "seconds_per_epoch": seconds / epochs,
        "embed_files_per_s": embed_files, "embed_model_per_s": embed_model,
        "seconds_to_auc": seconds_to_auc(history), "final_val_auc": history[-1]["val_roc_auc"],
        "flops_per_face": flops, "flops_per_face_pass": flops // members,
        "input": f"{params.input_height}x{params.input_width}", "threads": torch.get_num_threads(),
        **quality, **peak_rss_mb(loader_workers=False),
    }
