"""An object that stands in for another by forwarding attribute reads and writes.

Keras hands callbacks and `BackupAndRestore` a model object and reads and
sets its attributes; visiontune sometimes needs them to see a slightly
different model (the whole classifier while a cached trainer fits, a model
whose weight files keep LoRA adapters). Python has no built-in proxy, so
this is the one place that forwards attributes.
"""


class Forwarding:
    """Forwards every attribute it does not define itself to `_route(name)`.

    Subclasses define methods to override, and may override `_route` to send
    some names elsewhere; by default everything goes to `target`. The proxy's
    own state lives in attributes named in `_OWN`, set with `_own`.
    """

    _OWN = ("_target",)

    def __init__(self, target):
        self._own("_target", target)

    def _own(self, name, value):
        object.__setattr__(self, name, value)

    def _route(self, name):
        return self._target

    def __getattr__(self, name):  # Only for names not found on the proxy itself.
        if name in self._OWN:  # Not set yet (a copy made without __init__): no recursion.
            raise AttributeError(name)
        return getattr(self._route(name), name)

    def __setattr__(self, name, value):
        setattr(self._route(name), name, value)
