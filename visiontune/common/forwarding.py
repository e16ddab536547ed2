"""An object that stands in for another by forwarding attribute reads and writes.

Keras hands callbacks and `BackupAndRestore` a model object and reads and
sets its attributes; visiontune sometimes needs them to see a slightly
different model (the whole classifier while a cached trainer fits, a model
whose weight files keep LoRA adapters). Python has no built-in proxy, so
this is the one place that forwards attributes.
"""


class Forwarding:
    """Forwards every attribute it does not define itself to `route(name)`.

    Subclasses define methods to override, and may override `route` to send
    some names elsewhere; by default everything goes to `target`.
    """

    def __init__(self, target):
        object.__setattr__(self, "_target", target)

    def route(self, name):
        return self._target

    def __getattr__(self, name):  # Only for names not found on the proxy itself.
        return getattr(self.route(name), name)

    def __setattr__(self, name, value):
        setattr(self.route(name), name, value)
