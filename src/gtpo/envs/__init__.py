"""Environments: what the model interacts with over the turns of an episode, behind one interface.

``base`` defines the interface (``reset``/``step``, text in and text and a reward out, Gymnasium's shape) and
the ``info`` keys the trainer reads; ``python_tool`` is the math tool-integrated-reasoning episode (a sandbox and
a grader behind ``step``); ``gem`` adapts GEM's games; ``user`` loads a user's own class; ``sources`` maps a data
source to its problems and environments. The rollout (``gtpo.rollout.episode``) drives any of them. See
docs/environments.md.
"""
