"""The xDS protocol engine (grpc.aio): streams (SotW and Delta), subscriptions,
nonces and ACK/NACK, per-proxy status, CSDS. It knows nothing of where the
resources come from: it serves the snapshot cache."""
