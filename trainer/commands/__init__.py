"""One thin module per trainer subcommand (train, evaluate, export, quantize): arguments in, one
call into the trainer, a printed summary out. torch is imported only when a command runs, so
``sonotrap --help`` works on an edge install without the trainer's dependencies."""
