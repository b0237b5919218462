"""A class job: `pkg.mod:Counter` + `bump`, with class args."""


class Counter:
    def __init__(self, start=0, step=1):
        self.value = start
        self.step = step

    def bump(self, times=1):
        self.value += self.step * times
        return self.value
