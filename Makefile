# Vision Suite. `make demo` and `make test` each set up a fresh machine first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
PYTEST_WORKERS ?= 2
SCALE ?= toy
ARGS ?=
BENCH_CONFIGS ?= configs/visformer/toy.yaml configs/visformer/visformer_tiny_in1k.yaml configs/visformer/visformer_small_in1k.yaml
BENCH_ARGS ?=

.PHONY: setup demo test test-slow smoke-paper gpu-check lint bench bench-gpu bench-mim bench-det bench-overhead bench-loupe bench-tel bench-denet bench-cosoc bench-stt bench-ediy rate-curve clean reproduce-%

setup: $(STAMP)

# Re-runs only when pyproject.toml changed; torch comes from the machine's local wheels.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/python -m experiments demo --config configs/visformer/toy.yaml

test: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) -m "not slow"

# The toy comparisons over seeds, the DDP agreement tests and a smoke run of every paper config (README: time).
# loadgroup: the smoke runs (up to 21 GiB each) share one worker, so that two never run side by side.
test-slow: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup -m slow --durations=15

# 2 CPU training steps + 1 validation step of every non-toy config on synthetic data of its shapes; the table is
# printed and written into docs/benchmarks.md.
smoke-paper: setup
	$(BIN)/python -m experiments smoke --paper --markdown docs/benchmarks.md

# On one GPU, under 8 minutes: every task's paper config at bf16 (step time, samples/s, memory, MFU), torch.compile
# on and off for Visformer-S and iTPN-B, the loader alone; rows appended to docs/benchmarks.md. On a CPU:
# make gpu-check GPU_CHECK_ARGS=--dry_run (toy configs, 2 steps; the fast suite runs it).
GPU_CHECK_ARGS ?=
gpu-check: setup
	$(BIN)/python -m experiments gpu_check --markdown docs/benchmarks.md $(GPU_CHECK_ARGS)

lint: setup
	$(BIN)/ruff check suite_base experiments lightning_modules datamodules tests benchmarks
	$(BIN)/ruff format --check suite_base experiments lightning_modules datamodules tests benchmarks

# Run every row of a paper's table (SCALE=toy on the CPU, SCALE=full needs the data and GPUs), then print it; ARGS
# go to every row (e.g. make reproduce-tel SCALE=full ARGS="--data.init_args.root /data/tel").
reproduce-%: setup
	$(BIN)/python -m experiments reproduce $* --scale $(SCALE) $(ARGS)

# Step time, samples/s, memory, FLOPs (and MFU on a GPU) for every registered paper config at batch 8; rows are
# appended to docs/benchmarks.md with the device named. On a GPU: make bench BENCH_ARGS=--compile for the compiled run.
bench: setup
	$(BIN)/python -m experiments bench $(foreach c,$(BENCH_CONFIGS),--config $(c)) --data.batch_size 8 --steps 5 \
		--warmup 2 --markdown docs/benchmarks.md $(BENCH_ARGS)

# iTPN pixel pre-training with 75 % masking vs the same model on every patch (the encoder must skip masked patches).
bench-mim: setup
	for r in 0.75 0.0; do $(BIN)/python -m experiments bench --config configs/itpn/pretrain_base_pixel_400ep.yaml \
		--data.batch_size 8 --steps 4 --warmup 2 --loader_batches 0 --model.init_args.mask_ratio $$r $(BENCH_ARGS); done

# The GPU check a session with a lent device runs (one short script): Visformer-S training at bf16-mixed, with and
# without torch.compile, rows appended to docs/benchmarks.md with the card's name and MFU.
bench-gpu: setup
	$(BIN)/python -m experiments bench --config configs/visformer/visformer_small_in1k.yaml --data.batch_size 128 \
		--steps 20 --warmup 5 --loader_batches 0 --markdown docs/benchmarks.md
	$(BIN)/python -m experiments bench --config configs/visformer/visformer_small_in1k.yaml --data.batch_size 128 \
		--steps 20 --warmup 10 --loader_batches 0 --compile --markdown docs/benchmarks.md

# Mask R-CNN training step with iTPN-B's pre-trained pyramid as the FPN at the paper's input size (short side 800,
# long side <= 1333, 2 images per device as the official 1x; the config's bf16-mixed on a GPU, fp32 on a CPU), then
# the toy Mask R-CNN; rows appended to docs/benchmarks.md.
bench-det: setup
	$(BIN)/python -m experiments bench --config configs/downstream/itpn_base_pixel_mask_rcnn_1x.yaml --data.batch_size 2 \
		--steps 3 --warmup 1 --loader_batches 0 --markdown docs/benchmarks.md --model.init_args.pretrained null \
		$(BENCH_ARGS)
	$(BIN)/python -m experiments bench --config configs/downstream/toy_mask_rcnn.yaml --data.batch_size 8 --steps 5 \
		--warmup 2 --markdown docs/benchmarks.md

bench-overhead: setup
	$(BIN)/python benchmarks/overhead.py

# TEL's video pipeline: decord decoding, the frames DataLoader and frozen-backbone extraction (frames/s); a row is
# appended to docs/benchmarks.md.
bench-tel: setup
	$(BIN)/python benchmarks/tel_video.py --markdown docs/benchmarks.md $(BENCH_ARGS)

# LOUPE's Shapley terms per step: Monte-Carlo sampling vs the fitted neural estimators, and the estimators' error;
# a row appended to docs/benchmarks.md. LOUPE_CKPT: a trained toy LOUPE (or ITC) checkpoint, else the initial weights.
LOUPE_CKPT ?=
bench-loupe: setup
	$(BIN)/python benchmarks/loupe_shapley.py --config configs/loupe/toy_loupe.yaml \
		$(if $(LOUPE_CKPT),--ckpt $(LOUPE_CKPT)) --markdown docs/benchmarks.md $(BENCH_ARGS)

# DE-Net training step (D + G update): the paper setting (256 px, batch 32, Inception-v3 DAMSM) on a GPU with
# bf16, and the toy setting on any machine; rows appended to docs/benchmarks.md.
bench-denet: setup
	$(BIN)/python benchmarks/denet_step.py --image-size 16 --batch-size 16 --ngf 16 --cond-dim 64 --vocab 23 \
		--damsm-backbone resnet10t --damsm-input 32 --device cpu --markdown docs/benchmarks.md
	$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && \
		$(BIN)/python benchmarks/denet_step.py --image-size 256 --batch-size 32 --bf16 --markdown docs/benchmarks.md \
		|| echo "no GPU: the 256 px, batch 32 step is timed on a GPU only"

bench-cosoc: setup
	$(BIN)/python benchmarks/cosoc_times.py --device cpu --cos-images 8 --episodes 1 --markdown docs/benchmarks.md
	$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && \
		$(BIN)/python benchmarks/cosoc_times.py --bf16 --cos-images 256 --episodes 10 --markdown docs/benchmarks.md \
		|| echo "no GPU: COS and SOC are timed on the CPU only"

# STT: frames/s of the tracklet loader (synthetic pedestrians in the MARS layout, written once under data/) and the
# training step for T = 8 clips: the paper setting (ResNet-50, 256x128; batch 32 with bf16 on a GPU, 8 on the CPU)
# and the toy's narrow model at 64x32; rows appended to docs/benchmarks.md.
bench-stt: setup
	$(BIN)/python benchmarks/stt_speed.py --height 256 --width 128 --steps 2 --markdown docs/benchmarks.md $(BENCH_ARGS)
	$(BIN)/python benchmarks/stt_speed.py --height 64 --width 32 --seq-len 8 --batch-size 16 --backbone resnet18 \
		--narrow --markdown docs/benchmarks.md $(BENCH_ARGS)

clean:
	rm -rf runs .pytest_cache

# BYOL vs E-DIY training step at the paper setting (ResNet-50, 224 px, two views; batch 8 on the CPU, 128 with bf16 on
# a GPU via BENCH_ARGS): the region terms' added cost is the ratio of the two rows appended to docs/benchmarks.md.
bench-ediy: setup
	for c in byol ediy; do $(BIN)/python -m experiments bench --config configs/ediy/$${c}_r50_in1k_300ep.yaml \
		--data.batch_size 8 --steps 3 --warmup 1 --loader_batches 0 --markdown docs/benchmarks.md $(BENCH_ARGS); done

# Learning-by-compression's rate-recovery curve at toy scale: the frozen judge for semantic recovery (the toy Visformer,
# trained once), a grid sweep over lambda_rate x lambda_sem (5 x 2: with and without the weak labels; its own study
# file: delete runs/sweeps/compression_toy_rate_sem* to start over, a finished study is not re-run), then PSNR and
# semantic recovery against bits per pixel, one curve per lambda_sem (PNG + CSV + Markdown).
JUDGE := runs/compression_judge/version_*/checkpoints/best.ckpt
rate-curve: setup
	ls $(JUDGE) >/dev/null 2>&1 || $(BIN)/python -m experiments fit --config configs/visformer/toy.yaml \
		--run_name compression_judge
	mkdir -p runs/sweeps
	$(BIN)/python -m experiments sweep --config configs/compression/toy.yaml \
		--space configs/sweeps/compression_lambda_rate.yaml --trials 10 --sampler grid --metric val/psnr --no_prune \
		--study compression_toy_rate_sem --storage sqlite:///runs/sweeps/compression_toy_rate_sem.db \
		--model.init_args.semantic_classifier '$(JUDGE)'
	$(BIN)/python -m experiments rate_curve --runs_dir runs/sweeps/compression_toy_rate_sem=toy \
		--out docs/figures/compression_toy_rate_curve.png
