"""An inverted index with MapReduce by key, its partitions left on the nodes.

Stage 1 maps each document to ``(word, doc id)`` pairs and reduces them by key
into ``{word: sorted doc ids}``; with ``keep=True`` each partition of the index
stays on the node that merged it and the call returns one Ref per partition.
Stage 2 maps over those Refs where they are (each task reads its partition from
its node's store) and returns each partition's most widespread words; only
those few come back.  The result is checked against a serial index.

    python examples/inverted_index.py [CLUSTER_TOML] [DOCUMENTS]

Without a cluster file it runs on the embedded local cluster.
"""

import heapq
import random
import sys
import time

import fabric

VOCABULARY = [f"term{i:04d}" for i in range(3000)]
TOP = 5


def documents(count: int, seed: int = 11) -> list[tuple[int, str]]:
    """(doc id, text) pairs whose words follow a skewed frequency, as real text does."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(VOCABULARY))]
    return [(doc_id, " ".join(rng.choices(VOCABULARY, weights, k=30))) for doc_id in range(count)]


def postings(document: tuple[int, str]):
    doc_id, text = document
    return ((word, [doc_id]) for word in set(text.split()))


def join_postings(ids: list[int], more: list[int]) -> list[int]:
    return sorted(ids + more)


def most_widespread(index_part: dict[str, list[int]]) -> list[tuple[int, str]]:
    """The partition's words found in the most documents, as (documents, word)."""
    return heapq.nlargest(TOP, ((len(ids), word) for word, ids in index_part.items()))


def serial_index(docs: list[tuple[int, str]]) -> dict[str, list[int]]:
    index: dict[str, list[int]] = {}
    for document in docs:
        for word, ids in postings(document):
            index.setdefault(word, []).extend(ids)
    return {word: sorted(ids) for word, ids in index.items()}


def main(cluster: str | None, count: int) -> int:
    docs = documents(count)
    started = time.perf_counter()
    with fabric.connect(cluster) as fx:
        parts = fx.map_reduce(postings, join_postings, docs, by_key=True, keep=True)
        top = heapq.nlargest(TOP, (pair for best in fx.map(most_widespread, parts) for pair in best))
        holders = {ref.node_ids for ref in parts}
        index = {word: ids for part in fx.map(dict, parts) for word, ids in part.items()}
    elapsed = time.perf_counter() - started
    print(f"{count:,} documents indexed in {len(parts)} partitions on {len(holders)} node(s) in {elapsed:.2f} s")
    for documents_with, word in top:
        print(f"  {word}  in {documents_with:,} documents")
    expected = serial_index(docs)
    if index != expected or top != heapq.nlargest(TOP, ((len(ids), w) for w, ids in expected.items())):
        print("MISMATCH: the fabric's index differs from the serial index")
        return 1
    print("OK: matches the serial index")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    cluster_file = args.pop(0) if args and args[0].endswith(".toml") else None
    sys.exit(main(cluster_file, int(args[0]) if args else 20_000))
