"""Driver for tests/test_pipeline.py: the pipeline under `accelerate launch`, each process recording the files it
writes (stage configs, TAPT corpus, report) in <config folder>/writes-rank<N>.txt."""

from __future__ import annotations

import os
import sys

from transferkit.recipes import pipeline


def record(function, path_of):
    def wrapper(*args, **kwargs):
        log = os.path.join(os.path.dirname(os.path.abspath(sys.argv[2])), f"writes-rank{os.environ['RANK']}.txt")
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(path_of(*args) + "\n")
        return function(*args, **kwargs)

    return wrapper


pipeline.write_stage_config = record(pipeline.write_stage_config, lambda out, name, stage: f"{out}/{name}.yaml")
pipeline.write_tapt_corpus = record(pipeline.write_tapt_corpus, lambda keys, out: pipeline.tapt_corpus_path(out))
pipeline.write_report = record(pipeline.write_report, lambda out, report: f"{out}/comparison")

if __name__ == "__main__":
    open(
        os.path.join(os.path.dirname(os.path.abspath(sys.argv[2])), f"writes-rank{os.environ['RANK']}.txt"), "a"
    ).close()
    pipeline.main(sys.argv[1:])
