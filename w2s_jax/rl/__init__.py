"""Training on the student's own samples (``job = 'rl'``).

  learner       the RL trainer: rollouts -> grades -> scoring -> update
  rollouts      sampling G completions per prompt with the jitted sampler
  problems      the prompt sources (synthetic task, GSM8K, MATH)
  graders       reward functions and their worker processes (JAX-free)
  scoring       log-probs of the sampled tokens under the policy and the
                frozen models, and the flat-batch update
  multiprocess  agreement checks across processes

The methods themselves (losses, hyperparameters) are specs in
``w2s_jax.methods``; this package runs whichever spec has ``job='rl'``.
"""
