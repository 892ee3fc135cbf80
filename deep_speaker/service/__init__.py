"""The speaker service: verification and identification over HTTP (docs/service.md).

`deep-speaker-serve --database URL` (deep_speaker.commands.serve) serves the API of
`deep_speaker.service.app` with uvicorn; model work runs in a bounded pool of
worker processes (`pool`), enrolments and API keys live in a SQL database
(`store`, `keys`: SQLite by default, PostgreSQL from a URL), and the limits are
one dataclass (`settings`). It needs the `serve` extra
(``pip install "deep-speaker[serve]"``) on top of the plain install: the model
runs in ONNX Runtime, without TensorFlow.

Nothing is imported here, so `deep_speaker.extras.require_extra("serve", ...)`
can name a missing extra before FastAPI or SQLAlchemy is imported.
"""
