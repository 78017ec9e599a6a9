"""Configuration as code: the pydantic model, the Jsonnet loader and the bundled library.

`model` is the schema (frozen snapshots, located errors, the version hash); `loader`
renders `.jsonnet` or reads `.json` with confined imports; `sidecar.libsonnet` ships
here as package data so that `pip install` users can import it.
"""
