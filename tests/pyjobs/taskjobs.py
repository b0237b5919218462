"""A job module that uses the emq client package (`@emq.task`): run in a
worker whose Python cannot import that package, it must fail saying so."""
import emq


@emq.task
def double(x):
    return 2 * x
