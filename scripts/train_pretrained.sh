#!/usr/bin/env bash
# The recipe of the pretrained model shipped in deep_speaker/pretrained/ (see MODEL_CARD.md).
# Trains on the real speech in ../shared/data (LibriSpeech excerpts and speechocean762; not
# vctk-mini, so the demo corpus's speakers stay unseen, and never samples/PhilippeRemy), holding
# out 25 LibriSpeech and 25 speechocean762 speakers listed in scripts/pretrained_heldout.txt.
# About 60 minutes on 2 CPU cores. Usage: bash scripts/train_pretrained.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-deep-speaker-data/pretrain}
DATA=${DATA:-../shared/data}
HELDOUT=$(grep -v '^#' scripts/pretrained_heldout.txt | paste -sd, -)

python scripts/preprocess.py --regenerate_full_cache --multi_threading --cache_output_dir "$WORK/cache" \
  --audio_dir "$DATA/librispeech" --audio_dir "$DATA/speechocean762"
python scripts/preprocess.py --generate_training_inputs --multi_threading --cache_output_dir "$WORK/cache" \
  --unseen_speakers "$HELDOUT" --speed_perturb 0.9,1.1
COMMON=(--cache_output_dir "$WORK/cache" --checkpoint_dir "$WORK/checkpoints" --width 0.25 --seed 7
        --perturbed_speakers classes --batch_norm_momentum 0.99)
python scripts/train_cli.py --loss_on_softmax --head amsoftmax --spec_augment --lr_schedule cosine \
  --am_margin_warmup_epochs 10 \
  --epochs ${SOFTMAX_EPOCHS:-40} --steps_per_epoch 100 --batch_size 64 --lr 0.002 "${COMMON[@]}"
python scripts/train_cli.py --loss_on_embeddings --normalize_embeddings --head amsoftmax --spec_augment \
  --epochs ${TRIPLET_EPOCHS:-5} --steps_per_epoch 50 --batch_size 32 --lr 0.0001 "${COMMON[@]}"
# The shipped files: copy $WORK/pretrained/* into deep_speaker/pretrained/ to replace the model.
python scripts/export_model.py --checkpoint "$WORK/checkpoints/triplet/best.keras" --output_dir "$WORK/pretrained" \
  --no_saved_model
