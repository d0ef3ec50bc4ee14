"""The tables of ``kdlab losses`` and ``kdlab methods``: the registries read back, with each entry's
hyper-parameters and defaults. Imported by those two commands only, so ``kdlab --help`` stays light."""

from __future__ import annotations

import inspect

from rich.table import Table


def losses_table() -> Table:
    from kdlab import losses

    table = Table(title="Registered losses (kdlab.losses.get(name, **kwargs))")
    table.add_column("name", style="bold cyan")
    table.add_column("hyper-parameters (defaults)")
    table.add_column("needs")
    table.add_column("what it is")
    for name in losses.available():
        cls = losses.registry._REGISTRY[name]
        params = inspect.signature(cls.__init__).parameters.values()
        hyper = ", ".join(
            p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default}"
            for p in params
            if p.name not in ("self", "reduction")
        )
        needs = ", ".join(n for n, flag in (("teacher", cls.requires_teacher), ("labels", cls.requires_target)) if flag)
        table.add_row(name, hyper, needs, (cls.__doc__ or "").strip().splitlines()[0])
    return table


def _default(field) -> object:
    if field.is_required():
        return "required"
    return field.default if field.default_factory is None else field.default_factory()


def methods_table() -> Table:
    from kdlab import methods

    table = Table(title="Distillation methods (method: {name: ..., ...} in a config)")
    table.add_column("name", style="bold cyan")
    table.add_column("tasks")
    table.add_column("hyper-parameters (defaults)")
    for name in methods.available():
        cls = methods.get_class(name)
        for i, task in enumerate(cls.tasks):
            fields = cls.params_for(task).model_fields
            shown = ", ".join(f"{k}={_default(f)}" for k, f in fields.items())
            table.add_row(name if i == 0 else "", task, shown)
    return table
