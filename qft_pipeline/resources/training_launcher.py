"""The client that launches torchrun under Dagster Pipes: rank 0's progress lines and the training's result come
back to the asset as Dagster events."""

import dagster as dg


def training_launcher() -> dg.PipesSubprocessClient:
    return dg.PipesSubprocessClient()
