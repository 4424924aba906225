"""The pure, sans-IO KugelAudio protocol core: no sockets, no event loops, no clocks."""
