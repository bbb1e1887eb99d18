"""function.yaml: the schema, the typed model it loads into, and the Kafka consumer settings."""

from .durations import format_byte_size, format_duration, parse_byte_size, parse_duration
from .kafka_settings import consumer_settings
from .loader import ConfigError, LoadedConfig, load_config
from .model import (
    AllocationMode,
    BalanceStrategy,
    FunctionConfig,
    HandlerRef,
    InitialOffset,
    KafkaAttributes,
    TriggerConfig,
)
from .schema import FieldSpec, SectionSpec, iter_field_specs, iter_sections

__all__ = [
    "AllocationMode",
    "BalanceStrategy",
    "ConfigError",
    "FieldSpec",
    "FunctionConfig",
    "HandlerRef",
    "InitialOffset",
    "KafkaAttributes",
    "LoadedConfig",
    "SectionSpec",
    "TriggerConfig",
    "consumer_settings",
    "format_byte_size",
    "format_duration",
    "iter_field_specs",
    "iter_sections",
    "load_config",
    "parse_byte_size",
    "parse_duration",
]
