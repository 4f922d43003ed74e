import setuptools

setuptools.setup(
    name='dreamer-idm',
    version='0.1.0',
    description=(
        'Dreamer and IDM (Model-Based RL via Imagination with Derived '
        'Memory) in TensorFlow 2.'),
    py_modules=[
        'dreamer_idm', 'models', 'tools', 'wrappers', 'bench', 'evaluate',
        'tables', 'plotting', 'sweep', 'figure1'],
    python_requires='>=3.10',
    install_requires=[
        'tensorflow>=2.16',
        'tf_keras',
        'tensorflow-probability>=0.24',
        'tensorboard',
        # The pair tested together: dm_control 1.0.50 cannot load mujoco 4
        # (no MjModel.flex_vertedge), so both are pinned.
        'dm_control==1.0.50',
        'mujoco==3.17.0',
        'numpy>=2',
        'ruamel.yaml',
        'scipy',
        'matplotlib',
    ],
    # Ray runs sweeps on a cluster; the tests use a local instance.
    extras_require={'test': ['pytest', 'ruff', 'ray'], 'ray': ['ray']},
)
