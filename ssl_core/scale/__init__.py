"""Galleries beyond one machine: sharded, resumable builds on Ray (or in one process) and on-disk IVF-PQ indexes.

`build.build_sharded` lists the sources (`listing`), cuts them into shards named by their inputs (`shards`),
embeds the missing ones (`stages`, on Ray with `ray_engine`), and commits an index of them (`ondisk`). Ray is an
optional dependency (``pip install 'patchlens[scale]'``), imported only by the Ray engine's functions.
"""
