//! porcupine's benchmarks and experiments (see `bench/README.md`); each binary in `src/bin`
//! measures one thing against a baseline taken in the same run and reports the ratio.
