#!/usr/bin/env bash
# Audio to a MaskGCT feature cache to semantic tokens, offline: a folder of generated speech-like
# audio (espeak-ng speech where it is installed, else tones; 16/22.05/24 kHz, wav and flac), a
# tiny randomly initialised w2v-BERT 2.0 built from its configuration, `rqf speech extract`, then
# examples/speech_maskgct.yaml on the cache. For real features name the real model instead:
#   rqf speech extract AUDIO_DIR processed_dir/ --model facebook/w2v-bert-2.0 --layer 17
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-demo_data/speech_extract}
PY=${PYTHON:-.venv/bin/python}
RQF=${RQF:-.venv/bin/rqf}
"$PY" - "$WORK" <<'PYTHON'
import shutil, subprocess, sys
from pathlib import Path

import numpy as np
import soundfile
from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

work = Path(sys.argv[1])
audio, model = work / "audio", work / "w2v-bert-tiny"
rng = np.random.default_rng(0)
espeak = shutil.which("espeak-ng")
for s in range(8):  # VCTK-like keys: p225/p225_000
    spk = f"p{225 + s}"
    (audio / spk).mkdir(parents=True, exist_ok=True)
    for u in range(4):
        rate = (16000, 22050, 24000)[(s + u) % 3]
        path = audio / spk / f"{spk}_{u:03d}.{'flac' if u == 3 else 'wav'}"
        if path.exists():
            continue
        if espeak:
            subprocess.run([espeak, "-v", "en", "-s", str(140 + 10 * s), "-w", str(path),
                            f"speaker {s} says sentence number {u}"], check=True)
            continue
        t = np.arange(int((1.0 + 0.5 * u + 0.1 * s) * rate)) / rate
        f0 = 110 + 25 * s + 10 * u * np.sin(2 * np.pi * 0.5 * t)
        x = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / rate) / k for k in range(1, 6))
        soundfile.write(path, (0.1 * x + 0.01 * rng.normal(size=t.size)).astype(np.float32), rate)
if not (model / "config.json").exists():
    import torch

    torch.manual_seed(0)
    config = Wav2Vec2BertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                intermediate_size=128, output_hidden_size=64)
    Wav2Vec2BertModel(config).save_pretrained(model)
    SeamlessM4TFeatureExtractor().save_pretrained(model)
print(f"{work}: {sum(1 for _ in audio.rglob('*.*'))} audio files, model {model}")
PYTHON
"$RQF" speech extract "$WORK/audio" "$WORK/cache" --model "$WORK/w2v-bert-tiny" --layer 3
"$RQF" inspect "$WORK/cache"
"$RQF" run examples/speech_maskgct.yaml --set storage.processed_dir="$WORK/cache" \
  --set output_dir=runs/speech_extract --set model.hidden_dims=[64] \
  --set train.max_steps=200 "$@"
