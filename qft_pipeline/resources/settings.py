"""The qft configuration as a Dagster resource: a YAML file plus per-run overrides of any section, built from
qft_core's own config classes."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Optional

import dagster as dg
from pydantic import BaseModel, Field, create_model

from qft_core.config import QftConfig, config_from_dict, load_config


def _dagster_annotation(annotation: Any) -> Any:
    """Dagster config has no Literal type: choices travel as str and qft_core validates them."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return str
    if origin is list:
        return list[_dagster_annotation(args[0])]
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [arg for arg in args if arg is not type(None)]
        return Optional[_dagster_annotation(inner)]
    return annotation


def _as_dagster_config(section: type[BaseModel]) -> type[dg.Config]:
    fields = {
        name: (
            _dagster_annotation(info.annotation),
            Field(default=info.get_default(call_default_factory=True), description=info.description),
        )
        for name, info in section.model_fields.items()
    }
    return create_model(section.__name__, __base__=dg.Config, __doc__=section.__doc__, **fields)


_SECTIONS = {name: _as_dagster_config(info.annotation) for name, info in QftConfig.model_fields.items()}


class _QftSettingsBase(dg.ConfigurableResource):
    def load(self) -> QftConfig:
        """The YAML file (or the embedded defaults), with the run config's explicit values on top."""
        base = load_config(self.config_file).model_dump(mode="json")
        overrides = self.model_dump(exclude_unset=True, exclude={"config_file"})
        for section, values in overrides.items():
            base[section].update(values)
        return config_from_dict(base, self.config_file or "<run config>")


QftSettings = create_model(
    "QftSettings",
    __base__=_QftSettingsBase,
    __doc__="The pipeline configuration: a YAML file plus per-run overrides of any section.",
    config_file=(Optional[str], Field(None, description="YAML config file; empty for the embedded defaults")),
    **{name: (section, Field(default_factory=section)) for name, section in _SECTIONS.items()},
)
