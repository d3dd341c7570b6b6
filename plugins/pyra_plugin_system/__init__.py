"""The bundled ``system`` tool plugin: commands, files and URLs, every risky call gated.

Registered through the ``pyra.plugins`` entry point like any third-party plugin.
"""

plugin = None  # the Plugin object arrives with the plugin API (tools issue)
