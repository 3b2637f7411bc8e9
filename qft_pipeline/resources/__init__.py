"""The resources of qft's Definitions, one per file: the configuration (`settings`), the IO manager that carries
tabular values between assets (`artifact_io_manager`) and the Pipes client that launches training
(`training_launcher`)."""

from qft_pipeline.resources.artifact_io_manager import ArtifactIOManager
from qft_pipeline.resources.settings import QftSettings
from qft_pipeline.resources.training_launcher import training_launcher

__all__ = ["ArtifactIOManager", "QftSettings", "resources"]


def resources(settings: QftSettings | None = None) -> dict:
    """The resources every qft asset, check and sensor may ask for, sharing one configuration."""
    qft = settings or QftSettings()
    return {
        "qft": qft,
        "io_manager": ArtifactIOManager(qft=qft),
        "pipes_subprocess_client": training_launcher(),
    }
