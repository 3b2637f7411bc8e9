"""The resources of qft's Definitions, one per file: the configuration (`settings`), the IO manager that carries
tabular values between assets (`artifact_io_manager`) and the Pipes client that launches training
(`training_launcher`)."""

from qft_pipeline.resources.artifact_io_manager import artifact_io_manager
from qft_pipeline.resources.settings import QftSettings
from qft_pipeline.resources.training_launcher import TrainingLauncher

__all__ = ["QftSettings", "TrainingLauncher", "artifact_io_manager", "resources"]


def resources(settings: QftSettings | None = None) -> dict:
    """The resources every qft asset, check and sensor may ask for; the IO manager reads the run's `qft`."""
    return {
        "qft": settings or QftSettings(),
        "io_manager": artifact_io_manager,
        "training_launcher": TrainingLauncher(),
    }
