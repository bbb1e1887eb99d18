"""streamworker: run Nuclio-style Python functions on Kafka records, in worker processes."""

__version__ = "0.1.0"
