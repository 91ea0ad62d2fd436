"""Task models on ELMo layers (Peters et al. 2018, sec. 3.3 and 5): NER, SRL and classification.

    readers.py   CoNLL-2003, CoNLL-2012 / CoNLL-2005 SRL, CSV/TSV/JSON-lines/class folders, hf:
    tags.py      IOB1 / BIO / BIOUL spans, conversion, allowed transitions
    metrics.py   conlleval-exact span P/R/F1; accuracy and macro-F1
    crf.py       CRF (forward algorithm, constrained Viterbi)
    cache.py     each sentence's ELMo layers computed once (memory or HDF5)
    encoder.py   scalar mix of the layers (+ word embeddings / char CNN baseline); BiLSTM
    task.py      the Task protocol that ner.py, srl.py and classify.py follow
    ner.py, srl.py, classify.py   the heads and their data glue
    train.py     training loop (early stopping, best checkpoint, JSON-lines log)
    checkpoint.py, config.py, data.py (TaskBatch, BatchMaker), split.py, cli.py (elmo-task)
"""
