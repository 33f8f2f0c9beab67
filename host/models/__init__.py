"""Models from Hugging Face checkpoints on the device: LLaMA-family decoders and BERT encoders.

    from hbmforge.host import open_device, Model
    dev = open_device("examples/u280_model.yaml")
    model = Model.from_pretrained("path/to/checkpoint", device=dev, quant={"weights": "int8", "kv_bits": 8})
    out = model.generate("Once upon a time", max_new_tokens=32)        # decoders
    emb = model.encode(["a sentence", "another one"])                   # encoders

Reading (:mod:`.checkpoint`, :mod:`.hf`), quantization recipes (:mod:`.recipe`), text
(:mod:`.tokenizer`), sampling (:mod:`.sampling`) and random test checkpoints (:mod:`.synthetic`).
"""
from .checkpoint import Checkpoint, CheckpointError
from .fit import ModelFitError
from .model import DecoderModel, EncoderModel, Generation, Model, Session, SessionError, TokenEvent
from .recipe import QuantRecipe, RecipeError, load_recipe
from .tokenizer import TextTokenizer

__all__ = ["Model", "DecoderModel", "EncoderModel", "Session", "Generation", "TokenEvent", "Checkpoint",
           "CheckpointError", "ModelFitError", "SessionError", "QuantRecipe", "RecipeError", "load_recipe",
           "TextTokenizer"]
