"""Scaling Monosemanticity's qualitative checks, made quantitative: specificity, sensitivity,
completeness and sparse probing. Pure functions on tensors and labels; docs/checks.md defines each."""
