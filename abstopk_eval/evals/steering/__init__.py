"""Steering against Difference-in-Means (paper Table 1): HarmBench refusal, MMLU and CE under steering."""
