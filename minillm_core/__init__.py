"""MiniLLM core: every stage of the pipeline as plain Python (never imports dagster).

Stages, each a module with a pydantic config model, one verb and a `main(argv)` command:
`mix` (data mix), `tokenizer`, `tensors` (token tensors), `model` + `train` (pretrain, SFT, DPO),
`evaluate`. `minillm_assets` wraps each verb in a Dagster asset; `minillm_core.cli` exposes them on
the command line.
"""

__version__ = "0.1.0"
