"""Layer 3, the training loop: the train params (`train_params`), what each loss learns from
(`objectives`), the loop itself (`fit`) and its processes and precision (`distributed`). The train and
cv stages (`facesim.pipeline`) run it; benchmarks run it as they do.

Imports `facesim.core` and `facesim.mlops`.
"""
