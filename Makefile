.PHONY: run test lint
run:  ## migrate, seed and start the engine on :3000 (starts PostgreSQL when none answers)
	scripts/run.sh $(ARGS)
test: ## the whole test suite against a real PostgreSQL and NATS
	scripts/test.sh
lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
