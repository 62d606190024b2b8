"""The names of the parallelism kinds and compute dtypes, without JAX: the job's flags
(job/config.py) offer them and train/parallel.py and train/step.py implement them."""

PARALLEL = ("jit", "fsdp", "pmap")
DTYPES = ("float32", "bfloat16")
