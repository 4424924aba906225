"""``kugelwire conformance``: property-based conformance testing of any server claiming the
KugelAudio streaming protocol (work in progress in this commit: the raw client only)."""
