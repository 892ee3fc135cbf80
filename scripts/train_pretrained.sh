#!/usr/bin/env bash
# The recipe of the pretrained model shipped in deep_speaker/pretrained/ (see MODEL_CARD.md).
# Trains on every set of real speech in ../shared/data that suits speaker training: LibriSpeech
# excerpts, speechocean762, Speech Commands, WUW-II telephone callers and Arabic Speech Commands
# (not vctk-mini, whose speakers make the demo corpus and must stay unseen; never
# samples/PhilippeRemy; not FSDD, 6 speakers of digits). Leaves out the 100 held-out speakers
# of scripts/pretrained_heldout.txt (25 per evaluation set). Softmax pre-training on every set,
# then the triplet stage on the read-English speakers (LibriSpeech and speechocean762) alone.
# 10 % of each speaker's audio is held back to choose the checkpoint (20 % before v5: the
# LibriSpeech speakers have one 14 s utterance each, so this trains on 1.4 s more of each).
# About 70 minutes on 2 idle CPU cores.
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
  --unseen_speakers "$HELDOUT" --speed_perturb 0.9,1.1 --test_fraction 0.1
# The training settings of each stage are in scripts/recipes/pretrained_{softmax,triplet}.json
# (train_cli.py --config; a flag given on the command line wins over the file):
# SOFTMAX_EPOCHS / TRIPLET_EPOCHS replace their 80 / 5 epochs.
COMMON=(--cache_output_dir "$WORK/cache" --checkpoint_dir "$WORK/checkpoints")
python scripts/train_cli.py --loss_on_softmax --config scripts/recipes/pretrained_softmax.json \
  ${SOFTMAX_EPOCHS:+--epochs "$SOFTMAX_EPOCHS"} "${COMMON[@]}"
# The triplet stage trains on the read-English speakers only (their own cache, with the same data settings),
# starting from the softmax stage of every set: it lowered held-out EER on read English (LibriSpeech, speechocean762)
# and left the other domains where they were (MODEL_CARD.md, "Recipes tried").
READ_HELDOUT=$(grep -E '^(librispeech|speechocean762) ' scripts/pretrained_heldout.txt | awk '{print $2}' | paste -sd, -)
python scripts/preprocess.py --regenerate_full_cache --multi_threading --cache_output_dir "$WORK/cache-read" \
  --audio_dir "$DATA/librispeech" --audio_dir "$DATA/speechocean762"
python scripts/preprocess.py --generate_training_inputs --multi_threading --cache_output_dir "$WORK/cache-read" \
  --unseen_speakers "$READ_HELDOUT" --speed_perturb 0.9,1.1 --test_fraction 0.1
python scripts/train_cli.py --loss_on_embeddings --normalize_embeddings --config scripts/recipes/pretrained_triplet.json \
  ${TRIPLET_EPOCHS:+--epochs "$TRIPLET_EPOCHS"} --cache_output_dir "$WORK/cache-read" \
  --checkpoint_dir "$WORK/checkpoints-read" --start_from "$WORK/checkpoints"
# The shipped files: copy $WORK/pretrained/* into deep_speaker/pretrained/ to replace the model. The score
# cohort (AS-norm) is the mean embedding of every training speaker, from 3 of its files.
python scripts/export_model.py --checkpoint "$WORK/checkpoints-read/triplet/best.keras" --output_dir "$WORK/pretrained" \
  --no_saved_model --cohort_exclude "$HELDOUT" \
  --cohort_audio_dir "$DATA/librispeech" --cohort_audio_dir "$DATA/speechocean762" \
  --cohort_audio_dir "$DATA/speechcommands" --cohort_audio_dir "$DATA/wuw2" \
  --cohort_audio_dir "$DATA/arabic-speech-commands"
