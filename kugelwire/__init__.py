"""kugelwire: the KugelAudio streaming TTS WebSocket protocol, sans-IO."""

__version__ = "0.1.0"
