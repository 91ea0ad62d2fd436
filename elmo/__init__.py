"""ELMo: deep contextualized word representations (Peters et al. 2018) in PyTorch.

    from elmo import Embedder
    embedder = Embedder.from_pretrained("path/to/model")   # ours, or options.json + weights.hdf5
    layers = embedder.embed_sentence(["The", "cat", "sat", "."])   # (3, 4, 2P) numpy array
"""

from elmo.chars import TokenBatch, batch_to_ids, batch_to_tokens, word_to_char_ids
from elmo.config import BiLMConfig, CharCNNConfig, ElmoConfig, preset
from elmo.featurizer import Embedder
from elmo.model import BiLMOutput, Elmo, ElmoBiLM, ElmoOutput
from elmo.scalar_mix import ScalarMix
from elmo.weights import load_original, save_original

__all__ = [
    "BiLMConfig", "BiLMOutput", "CharCNNConfig", "Elmo", "ElmoBiLM", "ElmoConfig", "ElmoOutput", "Embedder",
    "ScalarMix", "TokenBatch", "batch_to_ids", "batch_to_tokens", "load_original", "preset", "save_original", "word_to_char_ids",
]
__version__ = "0.1.0"
