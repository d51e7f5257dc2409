"""Frame-level feature stores: the frames of one encoder for many utterances, read one utterance at a time.

A store is a folder with three files (frames.f16, index.parquet, meta.json; their layout: reader). The modules:

    reader    FeatureStore, the store's file names and dtype, its errors, partial_dir / is_store, pad_batch
    workdir   the work folder `<root>.partial` a store is built in: its file names, durable writes, the rename
              that makes it the store
    journal   how a writer commits utterances to its work folder and how a later writer recovers them
    writer    FeatureStoreWriter: appends utterances, commits them in chunks, closes into a finished store
    shards    shard_items / shard_dir cut a work list into blocks, merge_stores joins their stores

A store appears at `<root>` only when its writer (or merge) finishes, so a reader never sees half a store; an
extraction that dies is resumed by opening a new writer on the same root, and an interrupted-then-resumed or a
sharded-then-merged extraction gives a store byte-identical to one uninterrupted pass over the same work list.

Nothing is re-exported here: import each name from the module that defines it, so that the import says which
part of the store a caller depends on (a reader only needs `reader`).
"""
