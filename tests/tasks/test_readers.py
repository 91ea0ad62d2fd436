"""Readers on small hand-written files in each format, malformed lines, and the real OntoNotes sample."""

import os

import pytest

from tasks.readers import (DataError, brackets_to_bio, from_hf_dataset, read_classification,
                           read_conll2003, read_conll2005_props, read_conll2012_srl, tokenize)


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return str(path)


CONLL2003 = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER


-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
"""


def test_conll2003(tmp_path):
    path = write(tmp_path, "a.txt", CONLL2003)
    xs = read_conll2003(path)
    assert [x.tokens for x in xs] == [["EU", "rejects", "German"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert [x.tags for x in xs] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert xs[1].source == f"{path}:7"
    chunks = read_conll2003(path, tag_column=2)  # any column can hold the tags
    assert chunks[0].tags == ["B-NP", "B-VP", "B-NP"]
    assert read_conll2003(path, with_tags=False)[0].tags is None


def test_conll2003_malformed(tmp_path):
    path = write(tmp_path, "bad.txt", CONLL2003.replace("rejects VBZ B-VP O", "rejects VBZ O"))
    with pytest.raises(DataError, match=r"bad.txt:4: expected 4 columns .*found 3"):
        read_conll2003(path)
    path = write(tmp_path, "bad2.txt", CONLL2003.replace("I-PER", "X-PER"))
    with pytest.raises(DataError, match=r"bad2.txt:8: tag 'X-PER' is not 'O' or PREFIX-TYPE"):
        read_conll2003(path)
    path = write(tmp_path, "one.txt", "EU\nrejects\n")
    with pytest.raises(DataError, match="one.txt:1: one column only"):
        read_conll2003(path)
    assert read_conll2003(path, with_tags=False)[0].tokens == ["EU", "rejects"]


CONLL2012 = """#begin document (x); part 000
x 0 0 Hi UH (TOP* - - - A * -
x 0 1 . . *) - - - A * -

x 0 0 They PRP (S(NP*) - - - A * (ARG0*) (ARG0*) (1)
x 0 1 said VBD (VP* say 01 - A * (V*) * -
x 0 2 it PRP (NP*) - - - A * (ARG1* (ARG1*) -
x 0 3 rained VBD (VP*) rain 01 - A * *) (V*) -

#end document
"""


def test_conll2012_srl(tmp_path):
    path = write(tmp_path, "a.gold_conll", CONLL2012)
    frames = read_conll2012_srl(path)
    assert len(frames) == 2  # the first sentence has no predicate
    assert frames[0].tokens == ["They", "said", "it", "rained"]
    assert frames[0].tags == ["B-ARG0", "B-V", "B-ARG1", "I-ARG1"] and frames[0].predicate == 1
    assert frames[1].tags == ["B-ARG0", "O", "B-ARG1", "B-V"] and frames[1].predicate == 3
    assert frames[0].sentence == frames[1].sentence == 1


@pytest.mark.parametrize("old,new,message", [
    ("(ARG1* (ARG1*) -", "(ARG1* (ARG1*) - extra", r":7: expected 14 columns"),
    ("*) (V*) -", "* (V*) -", r":8: argument 'ARG1' is never closed"),
    ("(ARG1* (ARG1*) -", "(ARG1* (A(B*) -", r":7: argument annotation '\(A\(B\*\)'"),
    ("* (V*) * -", "* * * -", r":5: argument column 1 of this sentence has 0 predicates"),
    ("(ARG0*) (ARG0*) (1)", "(ARG0* (ARG0*) (1)", r":6: argument 'V' opens inside 'ARG0'"),
])
def test_conll2012_malformed(tmp_path, old, new, message):
    assert old in CONLL2012
    path = write(tmp_path, "bad_conll", CONLL2012.replace(old, new, 1))
    with pytest.raises(DataError, match=message):
        read_conll2012_srl(path)


def test_brackets_conll2004_closing_and_stray_close():
    assert brackets_to_bio(["(A0*", "*A0)", "(V*V)"], ["a", "b", "c"]) == ["B-A0", "I-A0", "B-V"]
    with pytest.raises(DataError, match="b: '\\)' closes an argument that was never opened"):
        brackets_to_bio(["*", "*)"], ["a", "b"])


def test_conll2005_props(tmp_path):
    pasted = "The - (A0* *\ncat - *) (A1*)\nsat sit (V*) *\nknown know * (V*)\n\n"
    path = write(tmp_path, "p.props", pasted)
    frames = read_conll2005_props(path)
    assert [f.tags for f in frames] == [["B-A0", "I-A0", "B-V", "O"], ["O", "B-A1", "O", "B-V"]]
    props = write(tmp_path, "q.props", "- (A0* *\n- *) (A1*)\nsit (V*) *\nknow * (V*)\n\n")
    words = write(tmp_path, "q.words", "The\ncat\nsat\nknown\n\n")
    frames2 = read_conll2005_props(props, words_path=words)
    assert [(f.tokens, f.tags) for f in frames2] == [(f.tokens, f.tags) for f in frames]
    bad = write(tmp_path, "r.props", "The - (A0* *\ncat - *) (A1*)\nsat sit (V*) *\nknown - * (V*)\n\n")
    with pytest.raises(DataError, match=r"r.props:1: 1 predicates in the target column but 2"):
        read_conll2005_props(bad)


def test_classification_csv_tsv_jsonl(tmp_path):
    # UTF-8 with a byte-order mark, no header, a newline inside the quoted text (Pang & Lee's layout)
    path = write(tmp_path, "p.csv", '"1","a fine , moving film\n"\n"-1","dull ."\n', encoding="utf-8-sig")
    xs = read_classification(path, text_column="1", label_column="0")
    assert [(x.tokens, x.label) for x in xs] == [(["a", "fine", ",", "moving", "film"], "1"), (["dull", "."], "-1")]
    path = write(tmp_path, "h.tsv", "label\ttext\npos\tgood\nneg\tbad movie\n")
    assert [(x.tokens, x.label) for x in read_classification(path)] == [(["good"], "pos"), (["bad", "movie"], "neg")]
    with pytest.raises(DataError, match="no text column named 'sentence'"):
        read_classification(path, text_column="sentence")
    path = write(tmp_path, "j.jsonl", '{"text": "ok then", "label": "a"}\n\n{"text": "x" "label": 1}\n')
    with pytest.raises(DataError, match=r"j.jsonl:3: not a JSON object"):
        read_classification(path)
    path = write(tmp_path, "k.jsonl", '{"text": "ok then", "label": "a"}\n{"text": "no label"}\n')
    with pytest.raises(DataError, match=r"k.jsonl:2: expected a JSON object with keys 'text' and 'label'"):
        read_classification(path)
    assert read_classification(path, with_labels=False)[1].tokens == ["no", "label"]
    # unlabelled, no header: a numeric text column alone means no header row (the label column's
    # default name must not make the first row a header)
    path = write(tmp_path, "u.csv", '"x","first row"\n"y","second"\n')
    assert [x.tokens for x in read_classification(path, text_column="1", with_labels=False)] == [
        ["first", "row"], ["second"]]
    path = write(tmp_path, "short.csv", '"1","fine"\n"0"\n')
    with pytest.raises(DataError, match="short.csv: row 2: 1 fields, expected at least 2"):
        read_classification(path, text_column="1", label_column="0")


def test_classification_folders_and_tokenizer(tmp_path):
    for label, texts in {"sport": ["Goal! 2-1 win.", "Match off"], "tech": ["New chip's out."]}.items():
        os.makedirs(tmp_path / "bbc" / label)
        for i, t in enumerate(texts):
            (tmp_path / "bbc" / label / f"{i:03d}.txt").write_text(t)
    xs = read_classification(str(tmp_path / "bbc"), tokenizer="simple", max_tokens=4)
    assert [(x.tokens, x.label) for x in xs] == [
        (["Goal", "!", "2-1", "win"], "sport"), (["Match", "off"], "sport"), (["New", "chip's", "out", "."], "tech")]
    assert tokenize("U.S. stocks rose 2.5%.", "simple") == ["U.S", ".", "stocks", "rose", "2.5", "%", "."]


def test_from_hf_dataset():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({
        "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))})
    ds = datasets.Dataset.from_dict({"tokens": [["Ann", "Lee", "ran"]], "ner_tags": [[1, 2, 0]]}, features=features)
    assert from_hf_dataset(ds, "ner")[0].tags == ["B-PER", "I-PER", "O"]
    ds = datasets.Dataset.from_dict({"text": ["so good"], "label": [1]}, features=datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}))
    x = from_hf_dataset(ds, "classify")[0]
    assert (x.tokens, x.label) == (["so", "good"], "pos")


# -- the real OntoNotes sample (scripts/get_data.py) ---------------------------------------------
def _independent_counts(path):
    """Frames = argument columns per sentence (width - 12) = '(V' entries; B tags = '(' entries."""
    frames = v_entries = openings = tokens_in_frames = 0
    sentence = []
    with open(path, encoding="utf-8") as f:
        for line in list(f) + ["\n"]:
            if line.startswith("#"):
                continue
            cols = line.split()
            if cols:
                sentence.append(cols)
                continue
            if sentence:
                n = len(sentence[0]) - 12
                frames += n
                tokens_in_frames += n * len(sentence)
                args = [c for row in sentence for c in row[11:-1]]
                v_entries += sum(a.startswith("(V*") for a in args)
                openings += sum(a.startswith("(") for a in args)
                sentence = []
    return frames, v_entries, openings, tokens_in_frames


def test_ontonotes_sample_parsed_exactly(data_dir):
    path = os.path.join(data_dir, "srl", "nt_6401.gold_conll")
    frames = read_conll2012_srl(path)
    n, v, openings, tokens = _independent_counts(path)
    assert len(frames) == n == v == 80
    assert sum(len(f.tags) for f in frames) == tokens
    assert sum(t.startswith("B-") for f in frames for t in f.tags) == openings
    assert all(f.tags.count("B-V") == 1 and f.tags[f.predicate] == "B-V" for f in frames)
    # hand-checked frames (sentences 2 and 3 of the file)
    love = next(f for f in frames if f.tokens[:2] == ["To", "my"])
    assert love.tags == ["O"] * 6 + ["B-ARG1", "I-ARG1", "B-ARG0", "B-ARGM-ADV", "B-V", "O"]
    know, doing = [f for f in frames if f.tokens[:6] == ["My", "dear", "friend", ",", "I", "know"]]
    assert know.tags == ["B-ARGM-DIS", "I-ARGM-DIS", "I-ARGM-DIS", "O", "B-ARG0", "B-V"] + ["B-ARG1"] + ["I-ARG1"] * 5 + ["O"]
    assert doing.tags == ["O"] * 7 + ["B-ARG0", "O", "B-V", "B-ARGM-MNR", "B-ARGM-MNR", "O"]
    assert (know.predicate, doing.predicate) == (5, 9)


def test_conll2003_and_polarity_real_files(data_dir):
    for name, sentences in (("train", 14041), ("valid", 3250), ("test", 3453)):  # ../shared/DATA.md
        path = os.path.join(data_dir, "conll2003", f"{name}.txt")
        xs = read_conll2003(path)
        lines = [line for line in open(path, encoding="utf-8") if line.strip() and not line.startswith("-DOCSTART-")]
        assert len(xs) == sentences and sum(len(x.tokens) for x in xs) == len(lines)
        assert [x.tags[-1] for x in xs[:1]] == [lines[len(xs[0].tokens) - 1].split()[-1]]
    xs = read_classification(os.path.join(data_dir, "polarity", "pang_lee_sentences.csv"), "1", "0")
    assert len(xs) == 4000 and sum(x.label == "1" for x in xs) == sum(x.label == "-1" for x in xs) == 2000
    assert xs[0].tokens[:4] == ["the", "rock", "is", "destined"]  # no byte-order mark, no quotes
