#!/usr/bin/env bash
# alphavae-mini, the whole recipe with the project's own commands (see the model card,
# src/alphavae/weights/alphavae-mini/README.md). Every step resumes: re-running the script after an
# interruption continues each training run from its newest checkpoint and skips finished steps.
#
#   bash models/alphavae-mini/train.sh DATA RUNS
#
# DATA: folder for `alphavae data fetch` (about 1.2 GB); RUNS: folder for the runs and reports.
# Steps: STAGE1_STEPS (default 2000); stage 2 runs STAGE2_CROP_STEPS (default 1900) steps on 96 px
# native-resolution crops, batch 8, then continues to STAGE2_STEPS (default 4100) on 256 px crops of images
# resized to a 256 px short side, batch 2, the learning rate decaying linearly to 0 over the final
# STAGE2_DECAY_STEPS (default 1000), then anneals again in each window of STAGE2_ANNEALS (default
# "5700 7300 9000 10500 12000"; same data settings): a window ending at step A restarts the rate at
# 5e-4 * (A - start) / A (1.4e-4 from step 4,100 to 5,700, 1.1e-4 from 5,700 to 7,300, 9.4e-5 from 7,300 to
# 9,000, 7.1e-5 from 9,000 to 10,500, 6.25e-5 from 10,500 to 12,000) and lowers it linearly to 0 at step A.
# Windows ending after STAGE2_PROTOCOL_MOMENTS_AFTER (default 10500) give ABMSE the background moments of the
# 9 evaluation backgrounds (E[b] = 0.000436, E[b^2] = 0.888891 per channel in [-1, 1]; `alphavae
# background-moments` on the 9 solid colours prints them), so that ABMSE is the mean composite error over those
# backgrounds; earlier windows use the reference (ImageNet) moments. The naive-MSE run gets the same settings,
# where they are inert. Then phase 8: STAGE2_PHASE8_STEPS (default 1500; 0 skips it and phases 9-11) steps as a
# fresh run from each annealed model (RUNS/stage2-phase8, RUNS/stage2-naive-phase8): new AdamW state, 50 warm-up
# steps, rate 5.6e-5 falling linearly to 0, the last window's data and moments, Ref-KL weight 0, and PatchGAN
# inactive (its start step, 3,000, lies past the run's end), seed 0. Then phases 9-11: STAGE2_PHASE9_STEPS,
# STAGE2_PHASE10_STEPS and STAGE2_PHASE11_STEPS (default 1500 each; 0 skips that phase and the ones after it) more
# steps the same way, each from the previous phase's model (RUNS/stage2-phase9 to RUNS/stage2-phase11 and their
# -naive- twins), with rate 1e-4 and new batches (seed 1, 2, then 3). The shipped model is
# RUNS/stage2-phase11/final. Every run resumes from its newest checkpoint and skips the windows it has finished; a
# finished fresh-phase run is not redone (remove its folder to redo it, e.g. after appending a window to
# STAGE2_ANNEALS). The two stage-2 runs (AlphaVAE objective and the naive-MSE comparison) train side by side, one
# thread each, as on the 2-core CPU this model was trained on. Set THREADS to change the threads per run
# (default 1). STAGE2_RUNS (default "abmse naive") picks the stage-2 runs: "naive" trains only the naive-MSE
# comparison (and scores it), e.g. to add its row next to an ABMSE model trained before.
set -euo pipefail

data=${1:?usage: train.sh DATA RUNS}
runs=${2:?usage: train.sh DATA RUNS}
stage1_steps=${STAGE1_STEPS:-2000}
stage2_crop_steps=${STAGE2_CROP_STEPS:-1900}
stage2_steps=${STAGE2_STEPS:-4100}
stage2_decay_steps=${STAGE2_DECAY_STEPS:-1000}
stage2_anneals=${STAGE2_ANNEALS:-5700 7300 9000 10500 12000}
protocol_moments_after=${STAGE2_PROTOCOL_MOMENTS_AFTER:-10500}
fresh_steps=("${STAGE2_PHASE8_STEPS:-1500}" "${STAGE2_PHASE9_STEPS:-1500}" "${STAGE2_PHASE10_STEPS:-1500}"
             "${STAGE2_PHASE11_STEPS:-1500}")
fresh_rates=(5.6e-5 1e-4 1e-4 1e-4)  # phases 8-11; phase 8 + i runs with seed i
stage2_runs=${STAGE2_RUNS:-abmse naive}
seen=" "
for kind in $stage2_runs; do
    case $kind in
        abmse | naive) ;;
        *) echo "train.sh: STAGE2_RUNS takes abmse and/or naive, not '$kind'" >&2; exit 2 ;;
    esac
    if [[ $seen == *" $kind "* ]]; then  # two runs would train into one folder at once
        echo "train.sh: STAGE2_RUNS names '$kind' twice" >&2
        exit 2
    fi
    seen+="$kind "
done
if [ "$seen" = " " ]; then
    echo "train.sh: STAGE2_RUNS names no run (abmse and/or naive)" >&2
    exit 2
fi
fresh_count=0  # phases 8 to 7 + fresh_count run: a 0 in fresh_steps skips that phase and the ones after it
while [ "$fresh_count" -lt "${#fresh_steps[@]}" ] && [ "${fresh_steps[$fresh_count]}" -gt 0 ]; do
    fresh_count=$((fresh_count + 1))
done
whole=(--set data.size=256 --set data.resize_short_side=true --set data.batch_size=2)  # phases 2-11
protocol=(--set "loss.background_mean=[0.000436, 0.000436, 0.000436]"
          --set "loss.background_square=[0.888891, 0.888891, 0.888891]")
if [ -n "${STAGE2_ANNEAL_STEPS:-}" ]; then
    echo "train.sh: STAGE2_ANNEAL_STEPS is replaced by STAGE2_ANNEALS, the list of window ends (default \"5700 7300 9000 10500 12000\")" >&2
    exit 2
fi
export OMP_NUM_THREADS=${THREADS:-1}
recipe=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$runs"

[ -f "$data/manifest.jsonl" ] || alphavae data fetch -o "$data" --size 384 --workers 2
for split in val test; do
    [ -d "$runs/$split-split" ] || alphavae data export "$data/manifest.jsonl" --split $split -o "$runs/$split-split"
done

# Stage 1: a small RGB AutoencoderKL from scratch on opaque composites.
alphavae train-vae --config "$recipe/stage1_rgb.yaml" --init-config "$recipe/autoencoder_config.json" \
    --data "$data/manifest.jsonl" -o "$runs/stage1" --resume latest --set optim.max_steps="$stage1_steps"

# Stage 2: converted to RGBA on the fly (opaque initialisation; stage 1 is the Ref-KL reference) and
# fine-tuned with the AlphaVAE objective, next to the same run with naive 4-channel MSE.
# Phase 1 learns local detail from cheap 96 px crops; phase 2 sees whole images at the evaluation scale, without
# which large transparent regions stay unlearned (after phase 1: alpha ~0.3-0.4 far from the object on the
# bundled 91 % transparent 272x384 clip art, alpha MAE 0.23-0.27; see the model card).
latest_step() {  # run-name -> step of its newest checkpoint (0 if none)
    local newest
    newest=$(ls "$runs/$1/checkpoints" 2>/dev/null | grep '^step-' | tail -1 || true)
    newest=${newest#step-}
    echo $((10#${newest:-0}))
}
stage2() {  # config run-name
    local train=(alphavae train-vae --config "$recipe/$1" --vae "$runs/stage1/final" --data "$data/manifest.jsonl"
                 -o "$runs/$2" --resume latest)
    # Steps 1-1,700 ran with bf16 autocast (the configs' float32 is what every later step used).
    local bf16_steps=$((stage2_crop_steps < 1700 ? stage2_crop_steps : 1700))
    if [ "$(latest_step "$2")" -lt "$bf16_steps" ]; then
        "${train[@]}" --set optim.max_steps="$bf16_steps" --set mixed_precision=bf16 >> "$runs/$2.log" 2>&1
    fi
    if [ "$(latest_step "$2")" -lt "$stage2_crop_steps" ]; then
        "${train[@]}" --set optim.max_steps="$stage2_crop_steps" >> "$runs/$2.log" 2>&1
    fi
    if [ "$(latest_step "$2")" -lt "$stage2_steps" ]; then
        "${train[@]}" "${whole[@]}" --set optim.max_steps="$stage2_steps" \
            --set optim.decay_steps="$stage2_decay_steps" >> "$runs/$2.log" 2>&1
    fi
    local end last=${stage2_anneals##* } moments
    for end in $stage2_anneals; do  # the last window always runs: it exports final/ if the run stopped before
        moments=()
        [ "$end" -le "$protocol_moments_after" ] || moments=("${protocol[@]}")
        if [ "$end" = "$last" ] || [ "$(latest_step "$2")" -lt "$end" ]; then
            "${train[@]}" "${whole[@]}" ${moments[@]+"${moments[@]}"} --set optim.max_steps="$end" \
                --set optim.decay_steps="$end" >> "$runs/$2.log" 2>&1
        fi
    done
    local i from=$2
    for ((i = 0; i < fresh_count; i++)); do
        fresh "$1" "$from" "$2-phase$((i + 8))" "${fresh_steps[$i]}" "${fresh_rates[$i]}" "$i"
        from=$2-phase$((i + 8))
    done
}
fresh() {  # config from-run run steps rate seed: a fresh run (new AdamW state) from from-run's final model
    alphavae train-vae --config "$recipe/$1" --vae "$runs/$2/final" --data "$data/manifest.jsonl" -o "$runs/$3" \
        --resume latest "${whole[@]}" "${protocol[@]}" --set optim.lr="$5" --set optim.scheduler=constant_with_warmup \
        --set optim.warmup_steps=50 --set optim.max_steps="$4" --set optim.decay_steps="$4" \
        --set loss.ref_kl_weight=0 --set seed="$6" >> "$runs/$3.log" 2>&1
}
pids=()
runs_trained=()
for kind in $stage2_runs; do
    if [ "$kind" = abmse ]; then
        stage2 stage2_rgba.yaml stage2 &
        runs_trained+=(stage2)
    else
        stage2 stage2_naive_mse.yaml stage2-naive &
        runs_trained+=(stage2-naive)
    fi
    pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
done
if [ "$failed" != 0 ]; then
    echo "train.sh: a stage-2 run failed; see the logs $runs/stage2*.log (rerun to resume)" >&2
    exit 1
fi

# Diffusion latent factors (unit-variance latents) fitted on the validation split, then the test-split
# metrics at 256² for both stage-2 models.
suffix=$([ "$fresh_count" -gt 0 ] && echo "-phase$((fresh_count + 7))" || true)  # the last phase that ran
[[ " ${runs_trained[*]} " != *" stage2 "* ]] ||
    alphavae latent-factors "$runs/stage2$suffix/final" "$runs/val-split" --limit 512 --write
for run in "${runs_trained[@]}"; do
    [ -f "$runs/report-$run$suffix/report.json" ] || alphavae eval-vae --vae "$runs/$run$suffix/final" \
        --data "$runs/test-split" --protocol clean --resize 256 -o "$runs/report-$run$suffix" &
done
wait
