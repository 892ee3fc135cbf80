#!/usr/bin/env bash
# The recipe of the pretrained model shipped in deep_speaker/pretrained/ (see MODEL_CARD.md).
# Trains on every set of real speech in ../shared/data that suits speaker training: LibriSpeech
# excerpts, speechocean762, Speech Commands, WUW-II telephone callers and Arabic Speech Commands
# (not vctk-mini, whose speakers make the demo corpus and must stay unseen; never
# samples/PhilippeRemy; not FSDD, 6 speakers of digits). Leaves out the 100 held-out speakers
# of scripts/pretrained_heldout.txt (25 per evaluation set). About 100 minutes on 2 CPU cores.
# Usage: bash scripts/train_pretrained.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-deep-speaker-data/pretrain}
DATA=${DATA:-../shared/data}
HELDOUT=$(grep -v '^#' scripts/pretrained_heldout.txt | awk '{print $2}' | paste -sd, -)

python scripts/preprocess.py --regenerate_full_cache --multi_threading --cache_output_dir "$WORK/cache" \
  --audio_dir "$DATA/librispeech" --audio_dir "$DATA/speechocean762" --audio_dir "$DATA/speechcommands" \
  --audio_dir "$DATA/wuw2" --audio_dir "$DATA/arabic-speech-commands"
python scripts/preprocess.py --generate_training_inputs --multi_threading --cache_output_dir "$WORK/cache" \
  --unseen_speakers "$HELDOUT" --speed_perturb 0.9,1.1
COMMON=(--cache_output_dir "$WORK/cache" --checkpoint_dir "$WORK/checkpoints" --width 0.25 --seed 7
        --perturbed_speakers classes --batch_norm_momentum 0.99)
python scripts/train_cli.py --loss_on_softmax --head amsoftmax --spec_augment --lr_schedule cosine \
  --am_margin_warmup_epochs 10 \
  --epochs ${SOFTMAX_EPOCHS:-80} --steps_per_epoch 100 --batch_size 64 --lr 0.002 "${COMMON[@]}"
python scripts/train_cli.py --loss_on_embeddings --normalize_embeddings --head amsoftmax --spec_augment \
  --epochs ${TRIPLET_EPOCHS:-5} --steps_per_epoch 50 --batch_size 32 --lr 0.0001 "${COMMON[@]}"
# The shipped files: copy $WORK/pretrained/* into deep_speaker/pretrained/ to replace the model. The score
# cohort (AS-norm) is the mean embedding of every training speaker, from 3 of its files.
python scripts/export_model.py --checkpoint "$WORK/checkpoints/triplet/best.keras" --output_dir "$WORK/pretrained" \
  --no_saved_model --cohort_exclude "$HELDOUT" \
  --cohort_audio_dir "$DATA/librispeech" --cohort_audio_dir "$DATA/speechocean762" \
  --cohort_audio_dir "$DATA/speechcommands" --cohort_audio_dir "$DATA/wuw2" \
  --cohort_audio_dir "$DATA/arabic-speech-commands"
