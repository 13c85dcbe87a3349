"""The analysis layer: reports, plots, evaluation of saved models, the study and throughput benchmarks."""
