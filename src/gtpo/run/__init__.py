"""What a training run shows and leaves behind, apart from the loop itself.

``console`` (the lines a person reads while it runs, and the closing summary), ``report`` (the run directory's
``curves.png``, ``summary.md`` and ``samples.jsonl``), ``learning_signal`` (the warning when the steps teach
nothing), ``stop`` (Ctrl-C and SIGTERM: finish the step, checkpoint, exit 130/143) and ``export`` (the final
policy as a Hugging Face model folder). The trainer calls these; none of them trains.
"""
