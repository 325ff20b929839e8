"""The paper's evaluation protocol (Experiments: Comparisons): metrics, style and aesthetic
scores, the protocol on one image set, the evaluation step (scoring) and its figure, the
comparison table, and the baselines scored by the same code."""
