"""Templates of `fedbench new` (package data: shipped in the wheel, read with importlib.resources).

In every `*.tmpl` file `{{name}}` is the new component's name and `{{Name}}` its CamelCase form.
"""
