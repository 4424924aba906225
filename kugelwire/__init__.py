"""kugelwire: the KugelAudio streaming TTS WebSocket protocol, sans-IO."""

from kugelwire.protocol.events import TurnMetrics

__all__ = ["TurnMetrics", "__version__"]

__version__ = "0.1.0"
