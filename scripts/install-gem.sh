#!/usr/bin/env sh
# GEM (gem-llm 0.1.0, gym-style language environments) into .venv, for `--data.train gem:...` (docs/environments.md).
# Part of the test command.
#
# Why --no-deps: gem-llm pins reasoning-gym==0.1.23, msgspec==0.19.0, nltk==3.9.1 and math-verify[antlr4_13_2],
# which clash with gtpo's reasoning-gym 0.1.25 (and verl's antlr4 4.9.3); pip refuses the combination. GEM's games
# import none of them (they need numpy, which gtpo has), so gem-llm goes in alone. Its math, code and QA
# environments, which would need them, download data sets at run time and are not used offline. Wordle and Hangman
# need nltk's word lists (not installed here).
#
# What GEM does import: `import gem` imports reasoning_gym (any version works for the games), so gtpo's own pin of it
# goes in first (the `gem` extra says the same); then gem-llm itself, which pip would otherwise refuse.
set -eu
PIP="${PIP:-.venv/bin/pip}"
"$PIP" install -q "reasoning-gym==0.1.25"
"$PIP" install -q --no-deps gem-llm==0.1.0
