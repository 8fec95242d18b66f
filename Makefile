# The two commands of the README; each sets up what it needs (idempotently).
.PHONY: train test setup lint
train:
	bash launch/train.sh
test:
	bash launch/test.sh
setup:
	bash launch/setup.sh
lint:
	.venv/bin/ruff check rlkit rewards recipes bench tests
