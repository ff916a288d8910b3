-- Runs last: fails when the plugin called a Neovim function this Neovim version has deprecated.

local harness = require('harness')

harness.test('plugin_should_call_no_deprecated_neovim_function', function()
  local from_plugin = {}
  for _, use in ipairs(_G.sandlink_test_deprecations or {}) do
    if use.traceback:find('neovim%-plugin/lua/sandlink') then
      table.insert(from_plugin, use.name .. '\n' .. use.traceback)
    end
  end
  harness.assert_equal({}, from_plugin, 'deprecated functions called by the plugin')
end)
